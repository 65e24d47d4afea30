import sys

from dfm_video.train.cli import main

sys.exit(main())
