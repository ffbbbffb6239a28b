//! Library side of the `flotilla` binary: [`local_cluster`], the control of replica processes
//! on loopback shared by the benchmarks, the black-box tests in `tests/` and the jepsen suite.

pub mod local_cluster;
