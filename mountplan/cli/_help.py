"""What each subcommand's ``--help`` says beyond its options: a description and examples."""

from __future__ import annotations

__all__ = ["DESCRIPTIONS", "EXAMPLES"]

DESCRIPTIONS = {
    "validate": "Check plan files against the schema and mountplan's rules; report every problem with its line "
    "and column (exit 2 if any plan is invalid). Touches nothing; needs no privileges.",
    "plan": "Dry run: compare the plan with the live mount table and print what apply would change and why. "
    "Asks the kernel whether each new mount's options would be accepted, without mounting anything.",
    "apply": "Make the plan's mounts, all or nothing: a failed step undoes every step before it. "
    "Also applies a plan saved by `mountplan plan -o FILE`, exactly as shown, or refuses (exit 8).",
    "diff": "Report drift of the live mount table from the plan; exit 10 when anything drifted.",
    "status": "List what mountplan manages for this plan and these roots, from its state file.",
    "destroy": "Unmount what apply made (innermost first) and remove the mountpoints it created.",
    "run": "Apply the plan, run a command, and always destroy afterwards; exit with the command's status. "
    "Signals sent to mountplan are forwarded to the command.",
    "recover": "Undo what interrupted applies and destroys left behind, from the journals in the state directory.",
    "graph": "Render the ordering graph of the plan's mounts (Graphviz dot or Mermaid). Each node shows the "
    "mount's attributes and propagation; an edge that a longer path implies is not drawn. Touches nothing.",
    "steps": "Print the ordered syscall transcript apply (or destroy) would follow. Touches nothing.",
    "completion": "Print a shell completion script generated from this command line (needs the `shtab` "
    "package: pip install 'mountplan[docs]').",
    "manpage": "Print the mountplan(1) manual page generated from this command line (needs the "
    "`argparse-manpage` package: pip install 'mountplan[docs]').",
}

EXAMPLES = {
    "validate": ["mountplan validate plans/*.yaml", "mountplan validate --json plan.yaml", "generate-plan | mountplan validate -"],
    "plan": [
        "mountplan plan plan.yaml --root sandbox=/srv/sandbox",
        "mountplan plan plan.yaml --root sandbox=/srv/sandbox -o saved.json",
        "mountplan plan plan.yaml --root sandbox=/srv/sandbox --detailed-exitcode --json",
    ],
    "apply": [
        "mountplan apply plan.yaml --root sandbox=/srv/sandbox",
        "mountplan apply saved.json",
        "mountplan -v apply plan.yaml --root sandbox=fd:3 --json",
    ],
    "diff": ["mountplan diff plan.yaml --root sandbox=/srv/sandbox || echo drifted"],
    "status": ["mountplan status plan.yaml --root sandbox=/srv/sandbox --json"],
    "destroy": ["mountplan destroy plan.yaml --root sandbox=/srv/sandbox", "mountplan destroy plan.yaml --root sandbox=/srv/sandbox --lazy"],
    "run": [
        "mountplan run plan.yaml --root input=/srv/in -- make test",
        "mountplan run plan.yaml --root input=/srv/in --unshare --chroot input -- /bin/sh -c 'make'",
        "mountplan run plan.yaml --root input=/srv/in --unshare --share-net -- ./fetch-deps",
    ],
    "recover": ["mountplan recover", "mountplan recover --state-dir /run/mountplan --json"],
    "graph": ["mountplan graph plan.yaml | dot -Tsvg > graph.svg", "mountplan graph plan.yaml --format mermaid"],
    "steps": ["mountplan steps plan.yaml", "mountplan steps plan.yaml --destroy --json"],
    "completion": [
        "mountplan completion bash > ~/.local/share/bash-completion/completions/mountplan",
        "mountplan completion zsh > ~/.zfunc/_mountplan",
        "mountplan completion fish > ~/.config/fish/completions/mountplan.fish",
    ],
    "watch": [
        "mountplan watch plan.yaml --root sandbox=/srv/sandbox --json",
        "mountplan watch plan.yaml --root sandbox=/srv/sandbox --reconcile --max-applies 3",
    ],
    "serve": ["mountplan serve --socket /run/mountplan.sock --plan plans/build-action.yaml"],
    "manpage": ["mountplan manpage > ~/.local/share/man/man1/mountplan.1"],
}
