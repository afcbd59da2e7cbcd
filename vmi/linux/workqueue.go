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
	return collectList(ctx, k, "workqueue list", head, listOff, func(a vmi.VA) (string, bool, *Problem) {
		o := k.obj("workqueue_struct", a)
		name := o.str("name", int(min(n, 256)))
		if o.err != nil {
			p := problem("workqueue", a, o.err)
			return "", false, &p
		}
		return name, true, nil
	})
}
