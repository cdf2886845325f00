"""The machinery behind the researcher's files: generic, one job per module. It names no
method's parts: a method is a recipe (`recipes/`), which it calls through `recipes.base.Recipe`.

    config        RunConfig: every setting a run has whatever the method; `setting(...)`
    cli           the command line: one flag per Config field, checked; main(config)
    errors        the one error policy: a type per cause, one `error:` line and exit status
    checks        flag, device and folder checks
    preflight     the run's checks before anything is written or downloaded
    jobs          the run's mode, decided once, as a list of model jobs
    run           a run, start to end: the folder, config.json, the jobs, the summary
    loop          the training loop of one model job (resume, spike restarts)
    step          one training step: forward, the recipe's loss, backward, clip, step
    stable_adamw  a generic optimizer a recipe may pick (utils.StableAdamW), on flat buffers
    flat_buffers  a parameter group's tensors as views of flat buffers
    data          the run's datasets (through the dataset's layout) and training loader
    training_state  resume checkpoints (checkpoint.pth)
    generators    seeding, and the random generators a checkpoint saves and restores
    spike_guard   the loss guard: nan stop, spike detection
    distributed   torchrun helpers: process group, global batches, collectives
    maps          a test set's anomaly maps through a pipeline, one process or split
    evaluation    every class's metrics and thresholds (one place), typed results
    metrics       fast exact AUROC, AP, F1-max and AUPRO
    thresholds    F1-max, pooled and calibrated OK/NG thresholds; thresholds.json
    report        the one writer: result lines, results.csv/.md, thresholds.json, report.html
    report_pages  results.md and report.html, rendered
    report_material  the worst cases' pictures and class.json
    heatmaps      heatmap and score-histogram pictures
    model_source  a trained model for the tools: from a run folder or a model.pth
    onnx_export   the pipeline as one ONNX file; ONNX Runtime
    predict, export  the commands behind predict.py and export.py
    tool_cli      their shared flags
    run_folder    the run folder, log.txt, config.json, model.pth
    fileio        atomic file writes
    demo_data     the generated demo dataset

Arrows: the scripts import the engine and their recipe; the engine imports `recipes`,
`models` and `dataset`; `models` and `dataset` import nothing from it. A recipe picks
generic pieces of the engine (`config.RunConfig`, `stable_adamw`), and `utils` re-exports
the reference's names from `engine.stable_adamw`, `engine.maps`, `engine.evaluation` and
`engine.metrics`.
This file imports nothing, so `import engine.metrics` loads only what it needs.
"""
