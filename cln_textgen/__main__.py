from cln_textgen.cli import main

raise SystemExit(main())
