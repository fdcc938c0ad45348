//! Declarative sagas: the [`Saga`] definition (a Kubernetes custom resource and a YAML file
//! `sagashop dev` reads) and the orchestrator that runs any valid definition.

pub mod api;
pub mod definition;
pub mod load;
pub mod machine;
pub mod metrics;
pub mod orchestrator;
pub mod participant;
pub mod versions;
pub mod view;

pub use definition::{Definition, InvalidSaga, LoadError, Saga, SagaSpec, StepDefinition};
