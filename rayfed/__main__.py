from rayfed.cli import main

raise SystemExit(main())
