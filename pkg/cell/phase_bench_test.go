package cell

import "testing"

// BenchmarkWriteManifest is the cost of one phase update on disk (the manifest rewritten
// atomically, file and directory synced).
func BenchmarkWriteManifest(b *testing.B) {
	dir := b.TempDir()
	m := &Manifest{SchemaVersion: SchemaVersion, Status: StatusRunning, Phase: PhaseReady}
	for b.Loop() {
		if err := WriteManifest(dir, m); err != nil {
			b.Fatal(err)
		}
	}
}
