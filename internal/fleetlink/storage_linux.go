package fleetlink

import "syscall"

// storage returns the size and the used bytes of the file system holding
// dir.
func storage(dir string) (total, used uint64, ok bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, false
	}
	bs := uint64(st.Bsize) // int32 on 32-bit arm, int64 on 64-bit
	return st.Blocks * bs, (st.Blocks - min(st.Bfree, st.Blocks)) * bs, true
}
