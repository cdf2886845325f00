"""The machinery behind the researcher's files: one job per module.

    config        Config: every setting of a run (the scripts fill it in)
    cli           the command line of the scripts: main(config), parse_args
    checks        flag, device and folder checks; the one-line Stop
    preflight     the run's checks before anything is written or downloaded
    run           a run, start to end: multi-class, class-separated, eval-only, demo
    loop          the training loop of one model (resume, spike restarts)
    step          one training step: forward, loss, backward, clip, step
    data          the run's datasets and training loader
    training_state  resume checkpoints (checkpoint.pth)
    spike_guard   the loss guard: nan stop, spike detection
    distributed   torchrun helpers: process group, global batches, collectives
    evaluation    the reference's evaluation: anomaly maps, image scores, metrics per class
    metrics       fast exact AUROC, AP, F1-max and AUPRO
    evaluator     the run's evaluation of every class (and its heatmaps)
    heatmaps      heatmap and score-histogram pictures
    results       result lines, results.csv and results.md
    run_folder    the run folder, log.txt, config.json, model.pth
    fileio        atomic file writes
    demo_data     the generated demo dataset

Arrows point one way: the scripts import the engine; the engine imports `models`,
`dataset` and `utils`, which import nothing from it (but `utils`, which re-exports the
evaluation functions under the reference's names from `engine.evaluation` and
`engine.metrics`: those two import nothing else of the project).
This file imports nothing, so `import engine.metrics` loads only what it needs.
"""
