package vmi

// Page numbers and page arithmetic on typed addresses, after gVisor's
// hostarch.Addr (RoundDown, RoundUp with ok, PageOffset). Every operation
// that can overflow 64 bits returns ok = false instead of wrapping.

// PageShift is log2 of the base page size, PageBytes the size itself
// (4 KiB on x86-64; large pages are multiples of it).
const (
	PageShift = 12
	PageBytes = 1 << PageShift
	pageMask  = PageBytes - 1
)

// GFN is a guest frame number: a guest-physical address shifted right by
// PageShift (LibVMI's gfn, Xen's and KVM's frame numbers).
type GFN uint64

// VPN is a virtual page number: a guest-virtual address shifted right by
// PageShift.
type VPN uint64

// maxFrame is the largest frame number whose address fits 64 bits.
const maxFrame = 1<<(64-PageShift) - 1

// Frame is the number of the frame that holds a.
func (a PA) Frame() GFN { return GFN(a >> PageShift) }

// PageBase is a rounded down to its page.
func (a PA) PageBase() PA { return a &^ pageMask }

// PageOffset is a's offset in its page.
func (a PA) PageOffset() uint64 { return uint64(a) & pageMask }

// PageAligned reports whether a is the start of a page.
func (a PA) PageAligned() bool { return a.PageOffset() == 0 }

// RoundUp is a rounded up to a page boundary, and false when that
// overflows.
func (a PA) RoundUp() (PA, bool) {
	e, ok := a.Add(pageMask)
	return e.PageBase(), ok
}

// Addr is the address of the frame's first byte, and false when the frame
// number is too large for a 64-bit address.
func (f GFN) Addr() (PA, bool) {
	if f > maxFrame {
		return 0, false
	}
	return PA(f << PageShift), true
}

// Page is the number of the page that holds a.
func (a VA) Page() VPN { return VPN(a >> PageShift) }

// PageBase is a rounded down to its page.
func (a VA) PageBase() VA { return a &^ pageMask }

// PageOffset is a's offset in its page.
func (a VA) PageOffset() uint64 { return uint64(a) & pageMask }

// PageAligned reports whether a is the start of a page.
func (a VA) PageAligned() bool { return a.PageOffset() == 0 }

// RoundUp is a rounded up to a page boundary, and false when that
// overflows.
func (a VA) RoundUp() (VA, bool) {
	e, ok := a.Add(pageMask)
	return e.PageBase(), ok
}

// Addr is the address of the page's first byte, and false when the page
// number is too large for a 64-bit address.
func (p VPN) Addr() (VA, bool) {
	if p > maxFrame {
		return 0, false
	}
	return VA(p << PageShift), true
}

// Frames is the range of frames [first, last] that n bytes at a touch,
// and false when n is 0 or a+n-1 overflows.
func (a PA) Frames(n uint64) (first, last GFN, ok bool) {
	if n == 0 {
		return 0, 0, false
	}
	end, ok := a.Add(n - 1)
	if !ok {
		return 0, 0, false
	}
	return a.Frame(), end.Frame(), true
}

// Pages is the range of pages [first, last] that n bytes at a touch, and
// false when n is 0 or a+n-1 overflows.
func (a VA) Pages(n uint64) (first, last VPN, ok bool) {
	if n == 0 {
		return 0, 0, false
	}
	end, ok := a.Add(n - 1)
	if !ok {
		return 0, 0, false
	}
	return a.Page(), end.Page(), true
}
