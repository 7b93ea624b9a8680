"""The real study in one command: every training strategy and the CLIP-Captioner for one model, the evaluation
grid (captioners x benchmarks), then the report (Tables 1-4 and Fig. 2).

    python -m train study --model llava-1.5-7b --datasets data/datasets.yaml [--gpus N | --slurm] [--dry-run]
    python -m train study status [--model NAME]

`plan` says what the study is (its steps, as data, with step counts and labelled GPU-hour estimates from
`estimates`); `state` reads how far each step got from the run folders and evaluation folders on disk;
`runner` runs what is not finished (the launcher for trainings, the existing evaluation command per cell, the
Slurm paths with --slurm); `report` writes the tables and the figure. Rerunning the command is how a study
resumes: a finished step is skipped, an interrupted training resumes from its last checkpoint, an interrupted
evaluation from its predictions.
"""
