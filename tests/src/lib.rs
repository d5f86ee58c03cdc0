//! The harness shared by end-to-end tests, the quickstart and the bench: throwaway
//! PostgreSQL clusters, the sample financial dataset, gateway processes.
