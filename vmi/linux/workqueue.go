package linux

import (
	"context"
	"fmt"

	"github.com/vmscope/vmscope/vmi"
)

// Workqueues lists the names of the kernel's workqueues (the `workqueues`
// list of struct workqueue_struct), in list order: the descriptions a
// kworker's name ends with come from these.
func (k *Kernel) Workqueues(ctx context.Context) ([]string, []Problem, error) {
	head, ok := k.Symbols.Addr("workqueues")
	if !ok {
		return nil, nil, fmt.Errorf("linux: no workqueues symbol: %w", ErrLayout)
	}
	listOff, err := k.Field("workqueue_struct", "list")
	if err != nil {
		return nil, nil, err
	}
	n, err := k.fieldSize("workqueue_struct", "name")
	if err != nil {
		return nil, nil, err
	}
	var out []string
	var probs []Problem
	if p := k.listWalk("workqueue list", head, maxListLen, func(e vmi.VA) bool {
		if ctx.Err() != nil {
			return false
		}
		o := k.obj("workqueue_struct", e-vmi.VA(listOff))
		name := o.str("name", int(min(n, 256)))
		if o.err != nil {
			probs = append(probs, problem("workqueue", e-vmi.VA(listOff), o.err))
			return true
		}
		out = append(out, name)
		return true
	}); p != nil {
		probs = append(probs, *p)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return out, probs, nil
}
