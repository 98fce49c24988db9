"""Classic RNN cells from their equations and multi-layer references for ``torch.nn.RNN/LSTM/GRU``."""

from .naive import gru_cell, lstm_cell, naive_gru, naive_lstm, naive_rnn, rnn_cell, weights_of

__all__ = ["gru_cell", "lstm_cell", "naive_gru", "naive_lstm", "naive_rnn", "rnn_cell", "weights_of"]
