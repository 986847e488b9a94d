//! The integer forward pass and perplexity (issue 5, in progress): so far the evaluation
//! text handling; the kernels it will run are `Backend::matmul` and `Backend::renorm`.

pub mod text;
