import sys

from aktin_sftp.cli import main

sys.exit(main())
