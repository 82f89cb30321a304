package records

import (
	"encoding/json"
	"testing"
)

func TestPythonJSON(t *testing.T) {
	for in, want := range map[string]string{
		`{"a":NaN,"b":[Infinity,-Infinity,1]}`: `{"a":null,"b":[null,null,1]}`,
		`{"s":"NaN and \"Infinity\"","x":NaN}`: `{"s":"NaN and \"Infinity\"","x":null}`,
		`{"s":"a\\","x":-Infinity}`:            `{"s":"a\\","x":null}`,
		`{"plain":1.5e308}`:                    `{"plain":1.5e308}`,
	} {
		got := string(PythonJSON([]byte(in)))
		if got != want {
			t.Errorf("PythonJSON(%s) = %s, want %s", in, got, want)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("PythonJSON(%s) = %s is not JSON", in, got)
		}
	}
	// A pass record Python wrote with a NaN latency reads, the latency absent.
	p, err := Parse(PythonJSON([]byte(`{"forward_mode":"decode","latency":NaN,"batch_size":4}`)))
	if err != nil || p.Latency != nil || p.BatchSize == nil || *p.BatchSize != 4 {
		t.Errorf("record with NaN latency: %+v, %v; want latency absent, batch_size 4", p, err)
	}
}
