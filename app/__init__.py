"""The Panel app: session state, one module per view, and the server that hosts them."""
