"""Real MTAs (Postfix, Exim, OpenSMTPD, Sendmail) run from Debian packages unpacked into
private trees, so that MTAs whose installed packages conflict can run side by side."""
