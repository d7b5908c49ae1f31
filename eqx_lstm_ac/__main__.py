"""`python -m eqx_lstm_ac train ...`: the same as the `eqx-lstm-ac` command."""

from ._cli import entry_point


if __name__ == "__main__":
    entry_point()
