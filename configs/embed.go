// Package configs ships the benchmark YAMLs and the model and hardware tables inside the
// binary, so moecapd works from any directory; files on disk with the same names win.
package configs

import "embed"

// FS holds every YAML file of this directory.
//
//go:embed *.yaml
var FS embed.FS
