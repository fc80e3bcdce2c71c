rule replay_conversations:
    input:
        unpack(conversation_inputs),
    output:
        csv=report(
            LAYOUT.conversation_csv(*kv_paths.REPLAY_PATTERN),
            caption="../report/conversations_csv.rst",
            category="Conversations",
            labels={"set": "{set}", "policy": "{policy}", "cache": "{cache}"},
        ),
        record=LAYOUT.conversation_record(*kv_paths.REPLAY_PATTERN),
    log:
        "logs/conversations/{set}/{policy}-{cache}.log",
    benchmark:
        "logs/benchmark/conversations_{set}_{policy}-{cache}.tsv"
    wildcard_constraints:
        set=r"[A-Za-z0-9-]+(\.\d+)?",
        policy=r"[a-z0-9_]+",
        cache="prefix|shift|server_reuse",
    conda:
        "../../envs/experiment.yaml"
    threads: config["experiment_threads"]
    resources:
        # One replay per accelerator, like an experiment: locally --resources gpu=1.
        gpu=1,
        mem_mb=config["experiment_mem_mb"],
    params:
        settings=conversation_settings,
        model=model_name(),
        model_file=model_path(),
    script:
        "../scripts/replay_conversations.py"


rule summarize_conversations:
    input:
        csvs=conversation_csvs(),
        code=code("summarize_conversations.py"),
    output:
        csv=report(
            LAYOUT.conversations_summary_csv,
            caption="../report/conversations_summary_csv.rst",
            category="Conversations",
            labels={"set": "all", "policy": "all", "cache": "summary (CSV)"},
        ),
        quality=report(
            LAYOUT.conversations_quality_csv,
            caption="../report/conversations_quality_csv.rst",
            category="Conversations",
            labels={"set": "all", "policy": "all", "cache": "quality by shifts (CSV)"},
        ),
        md=LAYOUT.conversations_summary_md,
        html=report(
            LAYOUT.conversations_page,
            caption="../report/conversations_page.rst",
            category="Conversations",
            labels={"set": "all", "policy": "all", "cache": "summary"},
        ),
    log:
        "logs/conversations/summary.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        model_name=model_name(),
    script:
        "../scripts/summarize_conversations.py"


rule plot_conversations:
    input:
        csvs=conversation_csvs(),
        code=code("plot_conversations.py"),
    output:
        ttft=report(
            LAYOUT.conversations_ttft_plot,
            caption="../report/conversations_ttft.rst",
            category="Conversations",
            labels={"set": "all", "policy": "all", "cache": "figure: TTFT per turn"},
        ),
        tokens=report(
            LAYOUT.conversations_tokens_plot,
            caption="../report/conversations_tokens.rst",
            category="Conversations",
            labels={
                "set": "all",
                "policy": "all",
                "cache": "figure: tokens evaluated",
            },
        ),
        quality=report(
            LAYOUT.conversations_quality_plot,
            caption="../report/conversations_quality.rst",
            category="Conversations",
            labels={
                "set": "all",
                "policy": "all",
                "cache": "figure: quality by shifts",
            },
        ),
    log:
        "logs/conversations/plot.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        model_name=model_name(),
    script:
        "../scripts/plot_conversations.py"
