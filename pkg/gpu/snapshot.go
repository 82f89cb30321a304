package gpu

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Snapshot is the node's GPUs at one moment, for `moecapd gpus`.
type Snapshot struct {
	Available     bool        `json:"available"`
	Reason        string      `json:"reason,omitempty"`
	DriverVersion string      `json:"driver_version,omitempty"`
	Label         string      `json:"label,omitempty"`
	GPUs          []GPUStatus `json:"gpus"`
}

// GPUStatus is one GPU of a Snapshot.
type GPUStatus struct {
	Device
	Metrics *Reading `json:"metrics,omitempty"`
	// Memory holds both NVML readings (v1 used; v2 used and reserved), to compare with
	// nvidia-smi; metrics.mem_used_bytes is its used_bytes.
	Memory    *MemoryInfo `json:"memory,omitempty"`
	Processes []Process   `json:"processes"`
	Error     string      `json:"error,omitempty"`
}

// TakeSnapshot reads every GPU of the node once. Without NVML it returns a snapshot that
// says why, not an error: "no GPU here" is an answer.
func TakeSnapshot(b Backend) (Snapshot, error) {
	s := Snapshot{Available: b.Available(), Reason: b.Reason(), GPUs: []GPUStatus{}}
	if !s.Available {
		return s, nil
	}
	s.DriverVersion = b.DriverVersion()
	devs, err := b.Devices()
	if err != nil {
		return s, err
	}
	s.Label = Label(devs)
	rs, err := b.Read(devs)
	if err != nil {
		return s, err
	}
	procs, perr := b.ComputeProcesses(devs)
	mem, merr := b.Memory(devs)
	for i, d := range devs {
		st := GPUStatus{Device: d, Processes: []Process{}}
		if r := rs[i]; r.Err != nil {
			st.Error = r.Err.Error()
		} else {
			r.Processes = nil // listed with command lines below
			st.Metrics = &r
		}
		if mi, ok := mem[d.Index]; ok && merr == nil {
			st.Memory = &mi
		}
		if perr != nil {
			st.Error = strings.TrimPrefix(st.Error+"; ", "; ") + perr.Error()
		}
		for _, p := range procs {
			if p.GPUIndex == d.Index {
				st.Processes = append(st.Processes, p)
			}
		}
		s.GPUs = append(s.GPUs, st)
	}
	return s, nil
}

// WriteJSON writes the snapshot as indented JSON.
func (s Snapshot) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// WriteText writes the snapshot as a table; "-" marks a metric the GPU does not report.
func (s Snapshot) WriteText(w io.Writer) error {
	if !s.Available {
		_, err := fmt.Fprintf(w, "no NVIDIA GPU telemetry on this machine: %s\n", s.Reason)
		return err
	}
	fmt.Fprintf(w, "driver %s, %d GPU(s): %s\n\n", s.DriverVersion, len(s.GPUs), s.Label)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GPU\tNAME\tUUID\tMEMORY USED / TOTAL\tUTIL\tPOWER\tTEMP\tPROCESSES")
	for _, g := range s.GPUs {
		mem, util, power, temp := "-", "-", "-", "-"
		if m := g.Metrics; m != nil {
			if m.MemUsed != nil {
				mem = bytesStr(*m.MemUsed) + " / " + bytesStr(g.MemoryTotal)
			}
			if mi := g.Memory; mi != nil {
				mem = bytesStr(mi.Used) + " / " + bytesStr(mi.Total) + " (" + mi.API
				if mi.Reserved != nil {
					mem += ", reserved " + bytesStr(*mi.Reserved)
				}
				if mi.API == MemAPIv2 && mi.V1Used != nil {
					mem += ", v1 used " + bytesStr(*mi.V1Used)
				}
				mem += ")"
			}
			if m.UtilGPU != nil {
				util = strconv.Itoa(int(*m.UtilGPU)) + "%"
			}
			if m.PowerMW != nil {
				power = fmt.Sprintf("%.0f W", float64(*m.PowerMW)/1000)
			}
			if m.TempC != nil {
				temp = strconv.Itoa(int(*m.TempC)) + " C"
			}
		}
		if g.Error != "" {
			mem = "error: " + g.Error
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", g.Index, g.Name, g.UUID, mem, util, power, temp, len(g.Processes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, g := range s.GPUs {
		for _, p := range g.Processes {
			used := "?"
			if p.UsedBytes != nil {
				used = bytesStr(*p.UsedBytes)
			}
			cmd := p.Cmdline
			if cmd == "" {
				cmd = "(command line not visible from here)"
			}
			fmt.Fprintf(w, "  GPU %d  pid %-8d %10s  %s\n", g.Index, p.PID, used, cmd)
		}
	}
	return nil
}
