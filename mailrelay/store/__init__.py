"""The outbox: models, migrations, state machine and the operations on them."""
