package daemon

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed web
var webFiles embed.FS

// webHandler serves the page at / from the binary (no CDN: it works offline).
func webHandler() http.Handler {
	sub, _ := fs.Sub(webFiles, "web")
	return http.FileServer(http.FS(sub))
}
