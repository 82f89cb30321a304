package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestE2EListInMakefile: every test that runs only end to end (its body calls
// launcher.E2E(), slurmCluster or findChromium) is selected by `make test-e2e`, whose
// -run pattern and package list name them, so no such test is skipped by make test and
// never run by CI either.
func TestE2EListInMakefile(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^E2E_TESTS := (.*)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile has no E2E_TESTS line")
	}
	sel, err := regexp.Compile(strings.ReplaceAll(string(m[1]), "$$", "$"))
	if err != nil {
		t.Fatalf("E2E_TESTS: %v", err)
	}
	rule := regexp.MustCompile(`(?m)^test-e2e:\n\t(.*)$`).FindSubmatch(mk)
	if rule == nil {
		t.Fatal("Makefile has no test-e2e rule")
	}
	gates := []string{"launcher.E2E()", "slurmCluster(t)", "findChromium()"}
	found := 0
	err = filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != "../.." || d.Name() == "testdata") {
			if err == nil {
				return filepath.SkipDir
			}
			return err
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, src, 0)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !strings.HasPrefix(fn.Name.Name, "Test") || fn.Body == nil {
				continue
			}
			body := string(src[fn.Body.Pos()-1 : fn.Body.End()-1])
			gated := false
			for _, g := range gates {
				gated = gated || strings.Contains(body, g)
			}
			if !gated || fn.Name.Name == "TestE2EListInMakefile" {
				continue
			}
			found++
			pkg := "./" + filepath.ToSlash(strings.TrimPrefix(filepath.Dir(path), "../../")) + "/"
			if !sel.MatchString(fn.Name.Name) {
				t.Errorf("%s (%s) runs only end to end, but make test-e2e's E2E_TESTS does not select it", fn.Name.Name, path)
			}
			if !strings.Contains(string(rule[1]), pkg) {
				t.Errorf("%s is in %s, which make test-e2e does not test", fn.Name.Name, pkg)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found < 3 {
		t.Errorf("found %d end-to-end tests; the scan is broken", found)
	}
}
