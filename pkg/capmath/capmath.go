// Package capmath derives a cell's CAP numbers from its pass records and measurements: the
// physical S-MBU/S-MFU (what the hardware really did, from pkg/passcost), upstream MoE-CAP's
// S-MBU/S-MFU next to them under their own names, the floors of what ran, the prediction of
// a cell that did not, and the cost (the one cost computation). It is pure: numbers in,
// numbers out, no I/O except ReadRecords.
package capmath
