"""The blind arena: people's votes between two captioners' captions of one image, and the ratings fitted to them.

`votes` stores the votes in the results database; `ratings` fits Bradley-Terry strengths with bootstrap
intervals, the win-rate matrix and the rank correlation of the ratings with an automatic metric. Neither
imports torch: the app's Arena tab and `python -m captionlab arena` use them directly.
"""
