//! The Weft operator (work in progress).
