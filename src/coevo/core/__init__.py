"""The small core every stage stands on: run folders and their lock, atomic files and safe deletion,
the records of a run's inputs, the rule that outputs never touch inputs, numeric guards, torchrun
processes and mixed precision. Nothing here imports a stage (models, search, train, deploy); the
outputs check asks the built-in data set (coevo.data.synthetic) which files it rendered."""
