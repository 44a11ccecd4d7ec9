//go:build tools

// Package tools pins the Kubernetes commands that ../build.sh builds from this
// module (go build k8s.io/kubernetes/cmd/...), so go.mod and go.sum list every
// module they need. It is never compiled on its own.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
