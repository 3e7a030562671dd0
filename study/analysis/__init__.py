"""Reading a study and deciding: loading, the explore tables, the confirm plan, the decision rule, the report.
Never imports Ray or study.runner: a study is read through study.base.storage."""
