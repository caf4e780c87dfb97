"""The command line starts at once: a subcommand's module is imported only when that subcommand is chosen
(`lmsleep --help` and `lmsleep data …` load no torch, no benchmark, no transformers or matplotlib), while
every subcommand is still listed with its line of help and prints its full arguments under --help."""
import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmsleep import cli
from lmsleep.continual import cli as continual_cli
from lmsleep.continual import bench
from lmsleep.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "matplotlib", "lmsleep.continual.bench", "lmsleep.continual.learner",
         "lmsleep.train", "lmsleep.model", "lmsleep.ops")  # what a help or `data` must not import (nor their modules)


# Runs `python -m lmsleep ARGV` (as runpy does for -m), then writes the names of the modules it imported to
# stderr. (-X importtime would miss the modules importlib.import_module loads.)
LIST_MODULES = """
import runpy, sys
sys.argv, code = ["lmsleep", *sys.argv[1:]], 0
try:
    runpy.run_module("lmsleep", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
print("\\n".join(["modules:", *sys.modules]), file=sys.stderr)
sys.exit(code)
"""


def imported(argv: list[str]) -> set[str]:
    """The modules `python -m lmsleep ARGV` imports, checking that it exits 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", LIST_MODULES, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stderr.rsplit("modules:\n", 1)[1].split())


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("argv,chosen", [
    (["--help"], []),
    (["continual", "--help"], ["lmsleep.continual.cli"]),
    (["continual", "bench", "--help"], ["lmsleep.continual.cli", "lmsleep.continual.bench.cli"]),
], ids=["help", "continual-help", "bench-help"])
def test_help_imports_only_the_chosen_family(argv, chosen):
    modules = imported(argv)
    listing = {"lmsleep.continual.bench"} if "bench" in argv else set()  # the package, to list the benchmarks
    assert heavy(modules - listing - set(chosen)) == []
    assert {module for _, module in commands()} & modules == set(chosen)


@pytest.mark.parametrize("task", list(TASKS))
def test_data_imports_no_torch_model_or_benchmark(task):
    modules = imported(["data", task, "--n", "3"])
    assert TASKS[task].__name__ in modules
    assert heavy(modules) == []


def test_a_chosen_benchmark_imports_only_its_own_module():
    modules = imported(["continual", "bench", "knowledge", "--help"])
    assert "lmsleep.continual.bench.knowledge" in modules
    others = {f"{bench.__name__}.{module}" for name, module in bench.MODULES.items() if name != "knowledge"}
    assert others & modules == set()


def commands() -> list[tuple[list[str], str]]:
    """Every subcommand's words and the module that adds its arguments."""
    found = [([name], command.module) for name, command in cli.SUBCOMMANDS.items()]
    found += [(["continual", name], command.module) for name, command in continual_cli.COMMANDS.items()]
    found += [(["continual", "bench", name], f"{bench.__name__}.{bench.MODULES[name]}") for name in bench.MODULES]
    return found


@pytest.mark.parametrize("words,module", commands(), ids=[" ".join(words) for words, _ in commands()])
def test_every_subcommand_prints_its_arguments(words, module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*words, "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"usage: lmsleep {' '.join(words)} ")
    reference = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(reference)
    for action in reference._actions:
        for flag in action.option_strings:
            assert flag in printed
        if not action.option_strings and action.metavar:
            assert str(action.metavar) in printed


@pytest.mark.parametrize("words,table", [([], cli.SUBCOMMANDS), (["continual"], continual_cli.COMMANDS)],
                         ids=["lmsleep", "continual"])
def test_every_subcommand_is_listed_with_its_help(words, table, capsys):
    with pytest.raises(SystemExit):
        cli.main([*words, "--help"])
    printed = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    for name, command in table.items():
        assert f"{name} {command.help}" in printed


def test_a_benchmark_help_line_is_its_module_help():
    for name in bench.MODULES:
        assert bench.help_line(name) == bench.load(name).HELP


@pytest.mark.parametrize("argv,choices", [
    (["chess"], cli.SUBCOMMANDS), (["continual", "chess"], continual_cli.COMMANDS),
    (["continual", "bench", "chess"], bench.MODULES),
], ids=["top", "continual", "bench"])
def test_an_unknown_subcommand_is_an_argparse_error_listing_the_choices(argv, choices, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'chess'" in error
    assert all(repr(name) in error for name in choices)


def test_main_calls_the_run_of_the_chosen_subcommand():
    from lmsleep.continual import demo
    from lmsleep.tasks import data_cli

    args = cli.build_parser().parse_args(["data", "puzzles"])
    assert args.run is data_cli.run and args.task == "puzzles"
    args = cli.build_parser().parse_args(["continual", "demo"])
    assert args.run is continual_cli.run and args.continual_run is demo.run
    args = cli.build_parser().parse_args(["continual", "bench", "levels", "--seeds", "1"])
    assert args.continual_run.__module__ == "lmsleep.continual.bench.cli" and args.bench_run is bench.load("levels")
