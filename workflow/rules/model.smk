localrules:
    get_model,


rule get_model:
    output:
        model=f"{config['models_dir']}/{{model_file}}",
    log:
        "logs/get_model/{model_file}.log",
    wildcard_constraints:
        model_file=model_files_regex(),
    conda:
        "../../envs/kvcache.yaml"
    params:
        entry=model_entry_params,
        pip_index_url=config["pip_index_url"],
        hf_base_url=config["hf_base_url"],
    script:
        "../scripts/get_model.py"
