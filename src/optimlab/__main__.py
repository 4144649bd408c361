import sys

try:
    from optimlab.cli import main
except KeyboardInterrupt:  # Ctrl-C during the first imports
    print("\noptimlab: interrupted before starting", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
