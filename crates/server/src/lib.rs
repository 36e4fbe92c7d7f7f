//! The Keyward server: REST API, admin panel, relay, jobs
