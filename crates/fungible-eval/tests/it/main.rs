//! `fungible-eval`'s integration tests, one binary: the runner end to end (`runner`), the
//! report from hand-built run directories (`report`), the HTML report in a real browser
//! (`report_chromium`), and the code scorer's sandbox against hostile answers
//! (`code_sandbox`).

mod code_sandbox;
mod report;
mod report_chromium;
mod runner;
