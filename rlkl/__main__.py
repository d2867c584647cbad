from rlkl.cli import main

raise SystemExit(main())
