//go:build tools

// Package tools pins the etcd server command that ../build.sh builds from this
// module (go build go.etcd.io/etcd/server/v3: the module root is etcd's main
// package). It is never compiled on its own.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
