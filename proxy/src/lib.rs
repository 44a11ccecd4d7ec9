//! The Weft proxy (work in progress).
