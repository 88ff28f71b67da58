/*
 * ctl: consentctl's subcommands. Each takes the arguments after its name
 * (argv[0] is the subcommand), prints errors on stderr naming what was
 * wrong, and returns the process exit code (0 ok, 1 failure, 2 usage).
 */
#ifndef CONSENTD_CTL_CTL_H
#define CONSENTD_CTL_CTL_H

int ctl_gen(int argc, char **argv);    /* ctl/gen.c */
int ctl_build(int argc, char **argv);  /* ctl/datadir_cmds.c */
int ctl_verify(int argc, char **argv); /* ctl/datadir_cmds.c */
int ctl_dump(int argc, char **argv);   /* ctl/datadir_cmds.c */
int ctl_check(int argc, char **argv);  /* ctl/datadir_cmds.c */
int ctl_import_csv(int argc, char **argv);  /* ctl/import.c */
int ctl_import_json(int argc, char **argv); /* ctl/import.c */
int ctl_feed(int argc, char **argv);        /* ctl/feed.c */
int ctl_pull(int argc, char **argv);        /* ctl/pull.c */
int ctl_publish(int argc, char **argv);     /* ctl/publish.c */
int ctl_receipt(int argc, char **argv);     /* ctl/receipt.c */
int ctl_audit(int argc, char **argv);       /* ctl/audit.c */


/* Opens FILE for reading or writing, "-" meaning stdin/stdout; -errno. */
int ctl_open_in(const char *path);
int ctl_open_out(const char *path);

#endif
