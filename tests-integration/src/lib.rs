//! Nothing here: this package only holds tests (`tests/`), see its manifest.
