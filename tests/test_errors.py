"""resflex.errors: what a user reads when a run refuses its input: one line, a hint, the exit code."""

from __future__ import annotations

import pytest

from resflex.errors import (
    ConfigError,
    DataError,
    describe_error,
    first_line,
    interruption_as_one_line,
    user_errors_as_one_line,
)


def test_a_message_over_several_lines_is_printed_as_one_line() -> None:
    """Messages built from f-strings over lines (and hints) must still be one line on the console."""
    error = ConfigError("pooling.levels must be\n   positive", hint="pooling.levels=[1,2]\t or  [1]")
    assert error.one_line() == "pooling.levels must be positive (hint: pooling.levels=[1,2] or [1])"
    assert str(DataError("no images", hint=None)) == "no images"


def test_a_user_error_found_through_the_exception_chain_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hydra re-raises inside an ``except``: the user's error is then only the ``__context__``."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info, user_errors_as_one_line():
        try:
            raise DataError("data.root does not exist: /x", hint="data.root=DIR")
        except DataError:
            raise RuntimeError("Error in call to target")  # noqa: B904 (an implicit chain, as Hydra's)
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: data.root does not exist: /x (hint: data.root=DIR)\n"


@pytest.mark.parametrize("value", ["", "0"])
def test_hydra_full_error_empty_or_0_keeps_the_one_line(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``HYDRA_FULL_ERROR=`` (set but empty) is not a request for the traceback, as in Hydra."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", value)
    with pytest.raises(SystemExit), user_errors_as_one_line():
        raise ConfigError("unknown pooling 'median'")
    assert capsys.readouterr().err == "error: unknown pooling 'median'\n"


def test_hydra_full_error_lets_ctrl_c_through_with_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """HYDRA_FULL_ERROR=1 asks for the full trace, for an interruption too (where was it stuck?)."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(KeyboardInterrupt), interruption_as_one_line("no results written"):
        raise KeyboardInterrupt


def test_first_line_is_the_first_non_empty_line_or_says_there_was_no_reason() -> None:
    assert first_line(OSError("\n  cannot identify image file 'a.jpg'\nTraceback...")) == (
        "cannot identify image file 'a.jpg'"
    )
    assert first_line(KeyError()) == "KeyError"
    assert first_line("") == "no reason given"  # a message taken out of its exception: no type to name


def test_describe_error_gives_the_users_cause_without_the_type_else_type_and_first_line() -> None:
    """The run record's ``error`` and the sweep log read like the console's ``error:`` line."""
    try:
        try:
            raise ConfigError("unknown backbone 'resnet19'", hint="backbone.name=resnet18")
        except ConfigError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert describe_error(wrapped) == "unknown backbone 'resnet19' (hint: backbone.name=resnet18)"
    assert (
        describe_error(ZeroDivisionError("division by zero\nmore")) == "ZeroDivisionError: division by zero"
    )
    assert describe_error(MemoryError()) == "MemoryError"
