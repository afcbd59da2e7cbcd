package watch

import (
	"encoding/json"
	"testing"
	"time"
)

// TestEventJSON pins the NDJSON keys of an event, in order: the task's
// fields sit flat between inode and function, and its address is not shown.
func TestEventJSON(t *testing.T) {
	ev := Event{Time: time.Unix(0, 0).UTC(), CPU: 1, Kind: "read", Path: "/etc/shadow", Dev: 2, Inode: 3,
		TaskInfo: TaskInfo{Addr: 0xffff888000001000, PID: 4, TGID: 5, Comm: "cat", UID: 6, EUID: 7, Exe: "/bin/cat"},
		Function: "f", VFSEntry: "vfs_read", Fields: []string{"i_size"}, Access: "r--", Stops: 8, Action: "log"}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"time":"1970-01-01T00:00:00Z","vcpu":1,"kind":"read","path":"/etc/shadow","dev":2,"inode":3,` +
		`"pid":4,"tgid":5,"comm":"cat","uid":6,"euid":7,"exe":"/bin/cat",` +
		`"function":"f","vfs_entry":"vfs_read","fields":["i_size"],"access":"r--","stops":8,"action":"log"}`
	if string(b) != want {
		t.Errorf("json:\n got %s\nwant %s", b, want)
	}
}
