"""The machinery behind the researcher's files: one job per module.

    config        Config: every setting of a run (the scripts fill it in)
    cli           the command line of the scripts: main(config), parse_args
    checks        flag, device and folder checks; the one-line Stop
    preflight     the run's checks before anything is written or downloaded
    run           a run, start to end: multi-class, class-separated, eval-only, demo
    loop          the training loop of one model (resume, spike restarts)
    step          one training step: forward, loss, backward, clip, step
    stable_adamw  the optimizer (utils.StableAdamW), one step on flat buffers
    flat_buffers  a parameter group's tensors as views of flat buffers
    data          the run's datasets and training loader
    training_state  resume checkpoints (checkpoint.pth)
    generators    the random generators a checkpoint saves and restores
    spike_guard   the loss guard: nan stop, spike detection
    distributed   torchrun helpers: process group, global batches, collectives
    evaluation    the reference's evaluation: anomaly maps, image scores, metrics per class
    metrics       fast exact AUROC, AP, F1-max and AUPRO
    evaluator     the run's evaluation of every class (and its heatmaps)
    eval_shards   the evaluation split over torchrun processes, gathered on rank 0
    heatmaps      heatmap and score-histogram pictures
    results       result lines, results.csv and results.md
    thresholds    F1-max, pooled and calibrated OK/NG thresholds; thresholds.json
    report_material  what an evaluation leaves for thresholds.json and report.html
    report_html   report.html
    inference     image -> anomaly map and score (evaluation, predict, ONNX); models from runs
    onnx_export   the pipeline as one ONNX file; ONNX Runtime
    predict, export  the commands behind predict.py and export.py
    tool_cli      their shared flags and one-line errors
    run_folder    the run folder, log.txt, config.json, model.pth
    fileio        atomic file writes
    demo_data     the generated demo dataset

Arrows point one way: the scripts import the engine; the engine imports `models`,
`dataset` and `utils`; `models` and `dataset` import nothing from it. `utils` re-exports
`StableAdamW` and the evaluation functions under the reference's names from
`engine.stable_adamw`, `engine.evaluation` and `engine.metrics`, which import nothing else
of the project but `engine.flat_buffers`.
This file imports nothing, so `import engine.metrics` loads only what it needs.
"""
