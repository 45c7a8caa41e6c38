//! `fungible-eval`'s integration tests, one binary: the runner end to end (`runner`), the
//! report from hand-built run directories (`report`), and the HTML report in a real browser
//! (`report_chromium`).

mod report;
mod report_chromium;
mod runner;
