//! Influence of training data on a model's outputs: scoring a query against the feature store
//! ([`score`](mod@score): TracIn-CP, cosine (LESS), TRAK / influence functions, DataInf), the
//! inner-product [`kernel`]s it streams with, the small Cholesky solve of the preconditioned methods
//! ([`linalg`]), and the [`InfluenceIndex`] of one training run (records' gradients at every
//! logged checkpoint, scored into per-record and per-contributor [`Attribution`]); the same
//! scores over a store split into shards ([`sharded`]), equal bit for bit.

mod index;
pub mod kernel;
pub mod linalg;
pub mod score;
pub mod sharded;

pub use index::{
    Attribution, FeatureSpace, GradientLayout, InfluenceIndex, Method, Progress, check_order,
    tracin_weights,
};
pub use score::{ProjectedQuery, ScoreMethod, Scores, score, self_influence};
