"""Console output, configured once: orchard's own progress and summary on stderr, library chatter kept out.

The spine's one place that configures logging. ``orchard``'s root command calls ``setup()`` before any command runs;
everything else only logs, through ``logging.getLogger(__name__)`` (names under ``orchard.``), and never configures
handlers, levels or warning filters itself.

Quiet (the default): orchard's loggers at INFO through a rich handler on stderr, one short line each; the libraries'
own logging at ERROR; the library warnings listed in ``QUIET_WARNINGS`` (all of them say something only the
library's authors can act on) filtered out; datasets' and transformers' progress bars for their internal work
(parquet writes, ``map``, weight loading and shard writing) off. Long work keeps its bar: the teacher's calls, the
trainer's steps, model downloads. ``--verbose`` (or ``ORCHARD_VERBOSE=1``, which subprocesses inherit) brings all
of it back, with orchard's DEBUG lines.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "ORCHARD_VERBOSE"

# Libraries whose logging, at WARNING, says nothing an orchard user can act on (e.g. bitsandbytes' "Failed to load
# CPU gemm_4bit_forward from kernels-community", which only means the plain CPU kernel is used). Their errors show.
LIBRARIES = (
    "accelerate", "anonymeter", "argilla", "bitsandbytes", "copulas", "datasets", "httpcore", "httpx", "huggingface_hub",
    "kernels", "mbi", "mostlyai", "openai", "peft", "rdt", "sdmetrics", "sdv", "sentence_transformers", "snsynth",
    "transformers", "trl", "urllib3",
)

# (message regex, category, module regex): library warnings that need no action. Narrow on purpose: a message, its
# category and the library module that raises it, so anything new (and anything from orchard itself) still shows.
QUIET_WARNINGS = (
    # transformers 5 renamed gradient checkpointing to activation checkpointing. TRL and PEFT still call
    # `is_gradient_checkpointing`; align/trainutil.py still passes `gradient_checkpointing=` (the fast path reads
    # `args.gradient_checkpointing`: the rename belongs with it). Both names work until transformers 6.
    (r"`(is_)?gradient_checkpointing` is deprecated", FutureWarning, r"transformers\."),
    # The Argilla SDK warns when a lookup finds nothing; orchard looks a workspace, dataset or reviewer up to
    # create it when it is missing (review/push.py, review/workflow.py), so "not found" is the expected answer.
    (r"(Workspace|Dataset|User) with (name|username|id) .* not found", UserWarning, r"argilla\."),
    # smartnoise-synth's MST hands private-pgm (mbi) a pandas frame, as its released versions all do.
    (r"Pandas dataframe inputs are deprecated", UserWarning, r"mbi\."),
)

_verbose = False
_hooked = False
_quieted: list = []  # (warnings filter) items setup() inserted, removed again by a later verbose setup()
_saved: dict = {}  # library settings as they were before setup() quieted them, restored by a verbose setup()


def verbose_from_env() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def setup(verbose: bool = False) -> None:
    """Configure logging, warnings and library progress bars for this process (calling it again re-configures).

    ``verbose`` (or ``ORCHARD_VERBOSE=1``): orchard at DEBUG, library logging, warnings and progress bars as the
    libraries set them. The choice is written back to ``ORCHARD_VERBOSE`` so that orchard processes started
    from this one say as much.
    """
    global _verbose, _hooked
    _verbose = verbose or verbose_from_env()
    if _verbose:
        os.environ[VERBOSE_ENV] = "1"
    _configure_handlers(_verbose)
    _configure_warnings(_verbose)
    if not _hooked:
        # transformers and datasets read their settings when imported; most commands never import them (that
        # costs a second), so the settings are applied when, and if, they are (at once if they already are).
        import wrapt

        _hooked = True
        wrapt.register_post_import_hook(_transformers, "transformers.utils.logging")
        wrapt.register_post_import_hook(_datasets, "datasets")
    else:
        for name, fn in (("transformers.utils.logging", _transformers), ("datasets", _datasets)):
            if name in sys.modules:
                fn(sys.modules[name])


def _configure_handlers(verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    # stderr, like the runner's stage lines: stdout stays for a command's result (JSON, tables) alone.
    handler = RichHandler(console=Console(stderr=True), show_time=verbose, show_level=False, show_path=False,
                          markup=False, rich_tracebacks=False)
    handler.setFormatter(_Short("%(name)s: %(message)s" if verbose else "%(message)s"))
    handler.set_name("orchard")
    root = logging.getLogger()
    for h in [h for h in root.handlers if h.get_name() == "orchard"]:
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries not listed keep their warnings
    logging.getLogger("orchard").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)


class _Short(logging.Formatter):
    """The message alone for progress lines; ``warning: …`` / ``error: …`` where the level matters (as the CLI
    prints its own warnings and errors)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def _configure_warnings(verbose: bool) -> None:
    while _quieted:
        item = _quieted.pop()
        if item in warnings.filters:
            warnings.filters.remove(item)
    if not verbose:
        for message, category, module in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message, category, module)
            _quieted.append(warnings.filters[0])
    # Python hides DeprecationWarning outside __main__; orchard's own deprecations are meant to be seen. (Adding a
    # filter also tells the warnings module that the list changed, after the removals above.)
    warnings.filterwarnings("default", category=DeprecationWarning, module=r"orchard(\.|$)")


def _transformers(tf_logging) -> None:
    import huggingface_hub.utils as hub

    # transformers' switch for its bars ("Loading weights", "Writing model shards") also switches the hub's download
    # bars, which stay as they were: a first download of a real model takes minutes.
    hub_off = hub.are_progress_bars_disabled()
    if _verbose:
        if "transformers" in _saved:
            level, bars = _saved.pop("transformers")
            tf_logging.set_verbosity(level)
            if bars:
                tf_logging.enable_progress_bar()
    else:
        _saved.setdefault("transformers", (tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()))
        # transformers keeps its own handler and level (it does not propagate): set them through its API.
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    if hub.are_progress_bars_disabled() != hub_off:
        if hub_off:
            hub.disable_progress_bars()
        else:
            hub.enable_progress_bars()


def _datasets(datasets) -> None:
    if _verbose:
        if "datasets" in _saved:
            level, bars = _saved.pop("datasets")
            datasets.utils.logging.set_verbosity(level)
            if bars:
                datasets.enable_progress_bars()
        return
    _saved.setdefault("datasets", (datasets.utils.logging.get_verbosity(), datasets.is_progress_bar_enabled()))
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()  # "Creating parquet from Arrow format", "Tokenizing train dataset", …
