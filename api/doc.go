// Package api holds the protobuf contracts between Detour's proxies and its controller:
// discovery (discoverypb) and workload identity (identitypb). The generated code is committed;
// `make generate` refreshes it.
package api
