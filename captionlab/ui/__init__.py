"""The Gradio web app: `captionlab.ui.app.build_app(settings)` assembles the four tabs.

Each tab is one `create_x_tab(settings)` builder in its own module; the tabs lay out components
and call `captionlab.service`. Importing this package does not import torch.
"""
