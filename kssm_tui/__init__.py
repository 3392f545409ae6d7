"""kssm_tui: the Textual training cockpit."""
