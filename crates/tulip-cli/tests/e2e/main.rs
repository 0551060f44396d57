//! End-to-end tests of the `tulip` binary on real Fashion-MNIST (the Debian package
//! `dataset-fashion-mnist`; `.ci/run` installs it).

mod attack;
mod device;
mod divergence;
mod download;
mod eval;
mod kill;
mod resume;
mod support;
mod train;
