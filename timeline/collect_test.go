package timeline

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/vmscope/vmscope/fsparse"
)

// TestCollectWithTablesEqualsWalk: what the timeline command collects
// (Collect: the live walk and the deleted scan at once, through the view
// that holds the inode tables in memory) equals Walk then WalkDeleted on
// the filesystem read from the device, record for record and problem for
// problem, on every image compared with the Sleuth Kit; and ScanDeleted
// (ls --deleted, --orphans) gives the same answer through the view.
func TestCollectWithTablesEqualsWalk(t *testing.T) {
	ctx := context.Background()
	for _, rel := range tskImages {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			v := openVolume(t, imagePath(t, rel))
			want, wantProbs, err := Walk(ctx, v, ".", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			want, dp, err := WalkDeleted(ctx, v, ".", "", want)
			if err != nil {
				t.Fatal(err)
			}
			wantProbs = append(wantProbs, dp...)
			tv, err := v.WithInodeTables(ctx, fsparse.TablesBudget)
			if err != nil {
				t.Fatal(err)
			}
			if tv.Ext4() == v.Ext4() {
				t.Fatal("no view made")
			}
			got, gotProbs, err := Collect(ctx, tv, ".", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(want, got) || !reflect.DeepEqual(wantProbs, gotProbs) {
				t.Fatalf("%d records, %d problems from the device; %d, %d from Collect on the view", len(want), len(wantProbs), len(got), len(gotProbs))
			}
			a, err := v.ScanDeleted(ctx, ".")
			if err != nil {
				t.Fatal(err)
			}
			b, err := tv.ScanDeleted(ctx, ".")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(a, b) {
				t.Fatal("ScanDeleted differs through the view")
			}
		})
	}
}
