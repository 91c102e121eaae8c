CHANGE_TASKS = ("ablation", "patching", "hint")
